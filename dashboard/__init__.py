"""`pulse dashboard`: the Streamlit dashboard and review desk over the job's tables.

A command: may import pipelines, connectors, transforms and models; nothing imports it.
"""
