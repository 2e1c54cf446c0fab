"""segconvert.converters"""
