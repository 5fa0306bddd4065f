CREATE TABLE payments (payment_id int, amount numeric);
