"""segconvert.eval"""
