"""``snapload plan``: what keep-warm policies cost, and what latency they buy, for a request trace
and a measured cold start. A discrete-event simulation (the event loop is in the Rust core,
``snapload_core::plan``); this package reads traces and cold-start reports, samples service times
and reports. docs/planning.md describes the model.

Modules, one concern each: ``traces`` (trace files and synthetic arrivals), ``service`` (service
time distributions), ``coldstart`` (a number or a measured report), ``sim`` (policies and the call
into the core), ``api`` (``snapload.plan``), ``report`` (table, JSON, savings at equal p99),
``chart`` (matplotlib), ``cli`` (the subcommand). Importing this package imports nothing heavy;
numpy and matplotlib are imported by the modules that need them.
"""
