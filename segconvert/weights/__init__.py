"""segconvert.weights"""
