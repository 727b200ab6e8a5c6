"""The run report's parts; its entry point is pipelines.report (options, writing, exit code).

  checks   reconciliation, latency and incident checks, upkeep and alert tallies: pure (polars)
  traces   which failures to trace, over which span and sensors: pure
  inputs   reads the lake and the ground truth into ReportData (the only part that does IO)
  figures  matplotlib figures of a ReportData, as PNG bytes
  render   the HTML page (Jinja2 template templates/report.html) and the console summary
"""
