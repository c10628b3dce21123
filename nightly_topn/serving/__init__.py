"""Serving the published lists: the Airflow Asset that announces them, versioned Redis loads
(``redis_store``) and the HTTP lookup service (``service``).

Importing this package imports nothing heavy: the DAG files import ``assets`` at parse time.
"""
