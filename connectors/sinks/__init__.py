"""What the job and its tools write: the five tables as Parquet (WriteParquetTables) or in BigQuery
(WriteBigQueryTables), the job's Beam counters (table job_metrics) and the review desk's labels
(table labels).

May import: models, and the other edge packages (connectors.sources, .feeds, .query);
never transforms, connectors.monitoring or pipelines.
"""
