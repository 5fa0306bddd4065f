CREATE TABLE shipments (order_id int, item text);
