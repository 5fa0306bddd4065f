CREATE TABLE sales (sale_id int, amount numeric);
