"""broker_gateway: consumes routed orders for one venue and publishes execution reports.

``service.py`` is the async shell (JetStream work queue in, ``EXECUTIONS`` out); ``brokers/`` holds
the venues behind one :class:`~services.broker_gateway.brokers.base.Broker` interface: ``sim`` (around
:mod:`desk.core.matching`) and ``alpaca`` (alpaca-py: ``brokers/alpaca.py``, ``alpaca_book.py``,
``netting.py``).
"""
