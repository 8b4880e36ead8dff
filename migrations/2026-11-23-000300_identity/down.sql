DROP TABLE care_team_members;
DROP TABLE role_assignments;
DROP TABLE users;
