"""The passes, one package each: ``gpn``, ``arp``, ``orthogonal``, ``rai``. Each package holds its
rewrite (a :class:`vgpcompile.core.contract.Pass`), the modules it inserts, its constants
and its lowering. The registry (:mod:`vgpcompile.core.registry`) names them; nothing here
is imported until a pass is used."""
