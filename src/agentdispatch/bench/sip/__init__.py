"""`agentdispatch bench sip`: sipp drives calls at a rate against the SIP gateway with real workers."""
