"""segconvert.commands"""
