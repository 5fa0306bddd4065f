CREATE TABLE orders (order_id int, customer text);
