"""The provider's review of datasets: approve or block a file, and the policy jobs on it follow."""
