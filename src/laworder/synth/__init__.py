"""laworder.synth"""
