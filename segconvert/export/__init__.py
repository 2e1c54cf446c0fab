"""segconvert.export"""
