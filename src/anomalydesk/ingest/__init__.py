"""anomalydesk.ingest"""
