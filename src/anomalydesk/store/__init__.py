"""anomalydesk.store"""
