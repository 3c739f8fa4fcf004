"""Jobs: long-running work with progress (the job runner), and CSV imports staged
with COPY and applied through the contacts store."""
