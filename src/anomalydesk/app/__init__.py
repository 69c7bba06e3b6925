"""anomalydesk.app"""
