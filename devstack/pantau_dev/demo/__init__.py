"""`pantau demo`: the whole system on the local stack."""
