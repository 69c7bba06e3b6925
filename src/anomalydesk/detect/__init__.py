"""anomalydesk.detect"""
