"""laworder.data"""
