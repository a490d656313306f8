"""The read-only web: views as plain functions over the read protocols (`views`), their routes
on the worker's web server (`routes`), and the dashboard's static files (`dashboard/`)."""
