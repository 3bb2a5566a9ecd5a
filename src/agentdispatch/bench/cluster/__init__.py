"""`agentdispatch bench cluster`: N nodes on one Redis vs one node in memory and on Redis, same run."""
