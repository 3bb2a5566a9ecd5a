"""`agentdispatch bench dispatch`: CreateDispatch -> JobAssignment latency and throughput.

`run` drives one run, `client` is the load-generating client process, `table` prints the result.
"""
