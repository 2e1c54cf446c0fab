"""segconvert.graph"""
