"""laworder.metrics"""
