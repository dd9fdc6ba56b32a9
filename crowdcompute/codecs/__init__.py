"""Payload codecs: how functions, inputs and outcomes become bytes and back.

:mod:`.pickled` (cloudpickle) and :mod:`.portable` (source and JSON) encode
jobs; :mod:`.outcomes` is the ``(values, errors)`` format both report in.
The SDK encodes with them and the worker decodes; the foreman never imports them.
"""
