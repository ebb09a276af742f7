"""laworder.experiments"""
