"""segconvert.parity"""
