CREATE TABLE rates (currency text, rate numeric);
