"""Config groups shipped by alignx-spin (located through the ``alignx.conf`` entry point, never imported)."""
