"""The lightpipe service: pipeline templates, datasets, jobs, results, topology and live events over HTTP.

``lightpipe serve`` starts it (:func:`lightpipe.service.app.create_app`);
``lightpipe.client`` and ``lightpipe submit`` talk to it. Jobs run in processes
of their own (:mod:`lightpipe.service.worker`) through the same code as
``lightpipe run``, reporting through run hooks into the database
(:mod:`lightpipe.service.db`). Needs the ``server`` extra.
"""
