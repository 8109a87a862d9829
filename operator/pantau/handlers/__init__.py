"""The thin Kopf layer. `registration` holds the handlers (importing it registers them with Kopf);
`state` the operator's memory and writes; `cli` the `pantau operator` command."""
