DROP TABLE resource_history;
