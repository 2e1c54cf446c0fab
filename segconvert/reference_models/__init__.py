"""segconvert.reference_models"""
