"""The whole pipeline on one machine: moto server as AWS, the real worker and handlers."""
