"""spotline's operator tools: the `spotline` CLI and the template doctor (never in the Lambda bundle
or the worker image)."""
