"""laworder.seg"""
