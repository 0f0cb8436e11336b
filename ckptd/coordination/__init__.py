"""Several daemons, one root: who may act on which run (README, "Several daemons on one root").

``local`` (the default): one daemon per root, enforced by a lock in the root's state directory
(``ckptd.coordination.local``). ``postgres``: per-run leases with fencing tokens in PostgreSQL
(``ckptd.coordination.leases`` is the model and the store interface, ``ckptd.coordination.pgstore``
the PostgreSQL store).

In the package order this sits above ``runs`` (it knows what a run is) and below ``pipeline`` and
``daemon``, which ask it before acting on a run.
"""
