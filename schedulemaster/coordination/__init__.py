"""What the master and the other processes say to each other on the master's Prefect port.

``wire`` holds the paths and the models the master's own endpoints take and give (the
master's ``coordination_api`` and ``record_api`` serve them); ``client`` is the one client
nodes, the flow runs and the notebook API call them with.
"""
