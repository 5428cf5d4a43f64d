"""Operating the lab: the ``lab`` command, its services and processes, health, the cluster's state.

Nothing here is needed to *use* Spark from a notebook; it starts, watches and stops the lab
(natively as local processes, or one service per container) and checks what runs where.
"""
