"""A plugin that fails while loading, to prove alignx names it and carries on."""

raise RuntimeError("alignx-broken is broken on purpose")
