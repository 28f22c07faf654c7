"""Helpers that the paper's parts do not need, shared by training, evaluation, the command line
and the notebooks:

* :mod:`~densflow.utils.errors` — :class:`~densflow.utils.errors.InputError`, a user's mistake;
* :mod:`~densflow.utils.validate` — checks of user-given values (numbers, images, noise, paths);
* :mod:`~densflow.utils.runtime` — the device, batches of images, progress that stays visible;
* :mod:`~densflow.utils.testing` — tiny datasets written in the exact on-disk formats;
* :mod:`~densflow.utils.widgets` — the notebooks' figures, with sliders where a live front end
  can move them.
"""
