"""segconvert.formats"""
