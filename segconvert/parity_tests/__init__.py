"""segconvert.parity_tests"""
