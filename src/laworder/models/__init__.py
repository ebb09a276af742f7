"""laworder.models"""
