CREATE TABLE batches (id int, note text);
