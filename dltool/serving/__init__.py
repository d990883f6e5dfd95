"""`dltool serve`: exported SavedModels behind TensorFlow Serving's REST API.

`models` finds the versions of a model under `saved_models/NAME/` and loads
each one's serving signature once; `batcher` groups concurrent requests into
one model call; `app` is the Starlette application that translates TF
Serving's JSON requests and responses; `server` runs it on uvicorn.

The layer sits above the engine (it loads exports with
`dltool.engine.predict`) and below the CLI; it never imports tuning.
"""
