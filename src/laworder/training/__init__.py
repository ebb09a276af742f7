"""laworder.training"""
